package doemu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DevicePrefix is where a volume named X appears on a droplet:
// DevicePrefix + X. In the emulator it is below the droplet's DOSVOB_ROOT.
const DevicePrefix = "/dev/disk/by-id/scsi-0DO_Volume_"

// DevicePath returns the path of an attached volume's device on the host
// running the emulator (the symlink inside the droplet's directory).
func (e *Emulator) DevicePath(dropletID int, volumeName string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	d, ok := e.droplets[dropletID]
	if !ok {
		return ""
	}
	return filepath.Join(d.Root, DevicePrefix+volumeName)
}

// attachDevice makes an attached volume visible in the droplet: a symlink
// named as on DigitalOcean, to a loop device over the backing file when loop
// devices work, else to the backing file itself.
func (e *Emulator) attachDevice(d *droplet, volID, name, file string) error {
	d.devMu.Lock()
	defer d.devMu.Unlock()
	if d.stopped {
		return nil
	}
	if _, ok := d.devices[volID]; ok {
		return nil
	}
	dev := &device{link: filepath.Join(d.Root, DevicePrefix+name)}
	target := file
	if !e.opts.NoLoopDevices && os.Geteuid() == 0 {
		loop, err := losetupAttach(file)
		if err != nil {
			e.logf("droplet %d: no loop device for volume %s, using its file: %v", d.ID, name, err)
		} else {
			dev.loop, target = loop, loop
		}
	}
	os.Remove(dev.link)
	if err := os.Symlink(target, dev.link); err != nil {
		if dev.loop != "" {
			losetupDetach(dev.loop)
		}
		return err
	}
	d.devices[volID] = dev
	return nil
}

// detachDevice removes an attached volume's device from the droplet.
func (e *Emulator) detachDevice(d *droplet, volID string) {
	d.devMu.Lock()
	defer d.devMu.Unlock()
	e.freeDevice(d, volID)
}

// freeDevice removes the symlink and loop device. Call with d.devMu held.
func (e *Emulator) freeDevice(d *droplet, volID string) {
	dev, ok := d.devices[volID]
	if !ok {
		return
	}
	os.Remove(dev.link)
	if dev.loop != "" {
		if err := losetupDetach(dev.loop); err != nil {
			e.logf("droplet %d: %v", d.ID, err)
		}
	}
	delete(d.devices, volID)
}

// refreshDevice makes a loop device see its file's new size after a resize.
func (e *Emulator) refreshDevice(d *droplet, volID string) {
	d.devMu.Lock()
	defer d.devMu.Unlock()
	if dev, ok := d.devices[volID]; ok && dev.loop != "" {
		if out, err := exec.Command("losetup", "--set-capacity", dev.loop).CombinedOutput(); err != nil {
			e.logf("droplet %d: losetup --set-capacity %s: %v: %s", d.ID, dev.loop, err, strings.TrimSpace(string(out)))
		}
	}
}

func losetupAttach(file string) (string, error) {
	out, err := exec.Command("losetup", "--find", "--show", file).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("losetup --find --show %s: %v: %s", file, err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

func losetupDetach(loop string) error {
	out, err := exec.Command("losetup", "--detach", loop).CombinedOutput()
	if err != nil {
		return fmt.Errorf("losetup --detach %s: %v: %s", loop, err, strings.TrimSpace(string(out)))
	}
	return nil
}
